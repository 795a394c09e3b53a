"""Caption-like English text: the training corpus of the tiny tokenizers and the captions of sample data.

One vocabulary serves both so that sample captions tokenize into real pieces, not mostly ``<unk>``.
"""

from __future__ import annotations

import random

_ADJECTIVES = (
    "red blue green yellow orange purple pink brown black white gray golden silver bright dark pale "
    "vintage modern rustic cozy elegant tiny huge small large tall old young happy smiling sleepy "
    "wooden metal glass stone plastic colorful minimalist abstract watercolor detailed blurry sunny "
    "rainy snowy foggy misty dramatic peaceful busy empty crowded ancient futuristic shiny soft "
    "fluffy furry striped spotted curly wavy frozen melting glowing sparkling dusty muddy wet dry "
    "delicious fresh spicy sweet sour crispy creamy homemade organic traditional festive romantic "
    "mysterious magical spooky cute funny angry lonely proud brave gentle fierce wild domestic "
    "geometric floral tropical nordic oriental industrial urban rural coastal alpine arctic "
    "luxurious cheap handmade printed embroidered knitted leather velvet silk cotton denim "
    "turquoise crimson beige ivory navy olive maroon lavender emerald amber charcoal neon pastel"
).split()
_SUBJECTS = (
    "dog cat puppy kitten horse bird eagle owl fish turtle rabbit fox bear lion tiger elephant "
    "woman man girl boy child family couple chef doctor teacher musician dancer painter farmer "
    "car truck bicycle train boat airplane house cabin castle bridge tower lighthouse church "
    "tree flower rose sunflower forest mountain lake river beach ocean island desert garden "
    "cake pizza sandwich coffee cup bowl salad burger bread apple strawberry chocolate "
    "chair table sofa lamp bed kitchen bathroom bedroom window door book laptop phone camera "
    "dress shirt jacket shoes hat bag necklace ring watch logo poster icon pattern illustration "
    "giraffe zebra monkey penguin dolphin whale shark octopus butterfly bee spider dragon unicorn "
    "squirrel deer wolf goat sheep cow pig chicken duck parrot flamingo peacock hedgehog koala "
    "soldier astronaut pirate wizard princess knight robot zombie ghost skeleton angel athlete "
    "student nurse pilot firefighter policeman businessman grandmother grandfather baby teenager "
    "motorcycle helicopter rocket submarine tractor scooter skateboard tram bus taxi ship yacht "
    "skyscraper temple pyramid cathedral mosque palace barn cottage apartment office factory "
    "waterfall volcano glacier canyon valley meadow jungle swamp cave cliff hill field vineyard "
    "pumpkin carrot tomato potato onion mushroom banana lemon cherry grape pineapple watermelon "
    "cookie cupcake donut pancake waffle noodles sushi taco steak soup cheese wine beer cocktail "
    "guitar piano violin drum trumpet microphone headphones television computer keyboard clock "
    "umbrella backpack suitcase bottle candle mirror vase basket pillow blanket carpet curtain "
    "balloon kite ball toy doll teddy puzzle map globe compass anchor crown sword shield trophy "
    "sky cloud rainbow moon star planet galaxy storm lightning sunrise shadow reflection horizon"
).split()
_VERBS = (
    "sitting standing running walking jumping sleeping playing eating reading writing painting "
    "smiling looking holding carrying riding swimming flying dancing singing cooking waiting "
    "climbing drinking laughing crying hugging kissing fishing hiking skiing surfing skating "
    "driving sailing shopping working studying praying resting posing shouting whispering "
    "floating falling glowing burning melting growing blooming hiding hunting chasing"
).split()
_PLACES = (
    "on the beach|in the park|in a kitchen|on a table|in the snow|at sunset|at night|in the city|"
    "on a wooden floor|in front of a house|near the river|under a tree|in the mountains|"
    "on a white background|in a studio|at the market|in a cafe|on the street|in the garden|"
    "by the lake|in a forest|inside a museum|on a rooftop|at the airport|in the desert"
).split("|")
_STYLES = (
    "stock photo|vector illustration|oil painting|3d render|digital art|black and white photo|"
    "close up|aerial view|portrait|landscape photography|cartoon|sketch|high resolution image|"
    "royalty free image|flat design|hand drawn|isometric view|wide angle shot"
).split("|")
_EXTRAS = (
    "with a smile|with flowers|with friends|for sale|for kids|in summer|in winter|in autumn|"
    "in spring|during the holidays|on vacation|for christmas|for the wedding|at the party|"
    "with text|with copy space|from above|from below|in the morning|in the evening"
).split("|")
_RARE = ("café", "naïve", "jalapeño", "façade", "Zürich", "São Paulo", "crème brûlée", "10%", "#1", "2019")


def words() -> list[str]:
    """Every word the captions draw from, once each (so the tokenizers cover all of them)."""
    phrases = [*_ADJECTIVES, *_SUBJECTS, *_VERBS, *_PLACES, *_STYLES, *_EXTRAS, *_RARE]
    return sorted({w for p in phrases for w in p.split()})


def caption(rng: random.Random, long: bool = False) -> str:
    """One caption; ``long`` ones run past CLIP's 77 tokens (several sentences, as some CC12M captions do)."""
    if long:
        return " ".join(_sentence(rng) for _ in range(rng.randint(7, 10)))
    return _sentence(rng)


def training_corpus(sentences: int = 3000) -> list[str]:
    """The fixed text the tiny tokenizers are trained on: generated captions plus the word list."""
    rng = random.Random(0)
    return [caption(rng) for _ in range(sentences)] + words()


def _sentence(rng: random.Random) -> str:
    subject = f"{rng.choice(_ADJECTIVES)} {rng.choice(_SUBJECTS)}"
    if rng.random() < 0.5:
        subject = f"{rng.choice(_ADJECTIVES)} {subject}"
    parts = [rng.choice(("a", "the", "an image of a", "photo of a", "")), subject]
    if rng.random() < 0.7:
        parts.append(rng.choice(_VERBS))
    parts.append(rng.choice(_PLACES))
    if rng.random() < 0.4:
        parts.append(rng.choice(_EXTRAS))
    if rng.random() < 0.15:
        parts.append(rng.choice(_RARE))
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.3:
        text = f"{rng.choice(_STYLES)}: {text}"
    text = text[0].upper() + text[1:]
    return text + rng.choice((".", "", ",", " -", "!"))
