"""Market data in the domain: ticks, the latest quote of each symbol, marking to market."""
