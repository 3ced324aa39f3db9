"""The live dashboard page: a static shell; its JavaScript signs in and talks to the API and /ws."""

from __future__ import annotations

from django.views.generic import TemplateView


class DashboardView(TemplateView):
    """Serve the dashboard; authentication happens in the page, with JWTs kept out of cookies."""

    template_name = "dashboard/index.html"
