"""REST views of orders."""
from rest_framework import viewsets


class OrderViewSet(viewsets.GenericViewSet):
    pass
