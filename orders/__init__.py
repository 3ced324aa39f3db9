"""Orders and their fills: the domain app that records what traders asked for and what executed."""
