"""URL routes of the HTTP side: admin, REST API, OpenAPI schema and the WebSocket status view."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from orders.views import OrderViewSet
from positions.views import PositionViewSet
from realtime.views import ConnectionStatusView, MarketDataView
from strategies.views import StrategyViewSet
from tradingrt.users import UserDirectoryView
from tradingrt.views import DashboardView

router = DefaultRouter(trailing_slash=True)
router.register("orders", OrderViewSet, basename="order")
router.register("positions", PositionViewSet, basename="position")
router.register("strategies", StrategyViewSet, basename="strategy")

urlpatterns = [
    path("", DashboardView.as_view(), name="dashboard"),
    path("dashboard/", DashboardView.as_view()),
    path("admin/", admin.site.urls),
    path("api/auth/token/", TokenObtainPairView.as_view(), name="token_obtain_pair"),
    path("api/auth/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("api/market-data/", MarketDataView.as_view(), name="market-data"),
    path("api/users/", UserDirectoryView.as_view(), name="user-directory"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(router.urls)),
    path("ws/status", ConnectionStatusView.as_view(), name="ws-status"),
    path("ws/status/", ConnectionStatusView.as_view(schema=None)),
]
