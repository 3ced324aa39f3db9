"""REST views of strategies."""
from rest_framework import viewsets


class StrategyViewSet(viewsets.GenericViewSet):
    pass
