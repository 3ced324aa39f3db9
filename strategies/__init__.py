"""Trading strategies: ownership, lifecycle and performance metrics."""
