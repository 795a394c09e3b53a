"""How training is distributed and kept alive: parallelize (HSDP, AC, compile), device, agreed stop, accumulation."""
