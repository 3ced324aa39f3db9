"""Positions: each user's holding per symbol, with P&L and risk metrics."""
