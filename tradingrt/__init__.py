"""The trading platform's Django project: settings, routing and shared wire formats."""
