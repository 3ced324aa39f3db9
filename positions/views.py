"""REST views of positions."""
from rest_framework import viewsets


class PositionViewSet(viewsets.GenericViewSet):
    pass
