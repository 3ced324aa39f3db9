"""URL routes of the HTTP side: admin, REST API, OpenAPI schema, the WebSocket status and security
views, and the Prometheus metrics."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter
from rest_framework_simplejwt.views import TokenRefreshView

from orders.views import OrderViewSet
from positions.views import PositionViewSet
from realtime.views import (
    ConnectionStatusView,
    LoginView,
    MarketDataView,
    SecurityReportView,
    metrics_view,
)
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
    path("api/auth/token/", LoginView.as_view(), name="token_obtain_pair"),
    path("api/auth/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("api/market-data/", MarketDataView.as_view(), name="market-data"),
    path("api/users/", UserDirectoryView.as_view(), name="user-directory"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(router.urls)),
    path("ws/status", ConnectionStatusView.as_view(), name="ws-status"),
    path("ws/status/", ConnectionStatusView.as_view(schema=None)),
    path("ws/security", SecurityReportView.as_view(), name="ws-security"),
    path("ws/security/", SecurityReportView.as_view(schema=None)),
    path("metrics", metrics_view, name="metrics"),
]
