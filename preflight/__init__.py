"""The checks both stages' preflights share: software versions, GPUs, the network between nodes, room
and permission to write, and the table they print as.

Each stage owns its command and its own checks (what it reads, what it writes) and builds them from
these rows. Every check is a small function that returns one ``Row`` (``table``), so a test can call
it alone with the machine's facts given.
"""
