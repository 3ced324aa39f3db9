"""Connection records (who is connected where, to what), the outbox of committed updates not yet
published, and the market-data feed permission."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ServerProcess(models.Model):
    """One running server process; its heartbeat says whether its connections are alive."""

    id = models.CharField(primary_key=True, max_length=64)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    channel_name = models.CharField(max_length=200, blank=True, default="")
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()
    # heartbeat_at + DEAD_AFTER_HEARTBEATS x this process's own interval: past it the process
    # is dead. Stored, so processes configured with different intervals judge each other right.
    expires_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        verbose_name_plural = "server processes"

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid} ({self.id})"


class Connection(models.Model):
    """One WebSocket connection, open for as long as its row exists and its process is alive."""

    id = models.CharField(primary_key=True, max_length=64)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="ws_connections",
    )
    server = models.ForeignKey(ServerProcess, on_delete=models.CASCADE, related_name="connections")
    client_address = models.CharField(max_length=100, blank=True, default="")
    user_agent = models.CharField(max_length=300, blank=True, default="")
    connected_at = models.DateTimeField()
    authenticated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-connected_at"]
        indexes = [models.Index(fields=["server", "user"])]

    def __str__(self) -> str:
        return self.id


class Subscription(models.Model):
    """One topic one connection is subscribed to."""

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="subscriptions"
    )
    topic = models.CharField(max_length=150)
    subscribed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["topic"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "topic"], name="subscription_connection_topic_unique"
            )
        ]
        indexes = [models.Index(fields=["topic", "connection"])]

    def __str__(self) -> str:
        return f"{self.connection_id} -> {self.topic}"


class MarketDataFeed(models.Model):
    """No table: holds `realtime.publish_market_data`, the market-data feed's permission.

    The quotes themselves are domain data (market.MarketQuote); publishing ticks is this
    module's job, so its permission keeps the realtime name that grants already use.
    """

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("publish_market_data", "Can publish market data ticks")]

    def __str__(self) -> str:
        return "market-data feed"


class PendingPublication(models.Model):
    """An update committed but not yet published: the transactional outbox.

    Written in the transaction that made the change and deleted once the update is published,
    so a publisher killed between its commit and its publish (or one that found Redis down)
    leaves the row behind, and a server's sweeper publishes it (realtime.publish).
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    message_type = models.CharField(max_length=32)
    topics = models.JSONField()
    payload = models.TextField()  # the encoded JSON payload, as it is published
    key = models.CharField(max_length=100, blank=True)  # the object, for the version gate
    version = models.PositiveBigIntegerField(null=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.message_type} {self.key} v{self.version} to {self.topics}"


class SecurityEvent(models.Model):
    """Security events of one kind, client IP, user and minute, counted (CONTRACT section 13).

    Aggregated in each process and written every SECURITY_EVENT_FLUSH_SECS (realtime.security),
    so a flood of bad frames is one row with a large count, not one write per frame.
    """

    kind = models.CharField(max_length=32, db_index=True)
    ip = models.CharField("client IP", max_length=45, blank=True, default="")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,  # a user deleted meanwhile must not fail a flush
    )
    # The user's name, or the name a failed login tried (which may not exist).
    username = models.CharField(max_length=150, blank=True, default="")
    minute = models.DateTimeField(db_index=True)
    count = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField()
    detail = models.CharField(max_length=300, blank=True, default="")  # the latest one's

    class Meta:
        ordering = ["-minute", "kind"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "ip", "username", "minute"], name="security_event_bucket_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} x{self.count} {self.ip or '-'} {self.username or '-'} {self.minute}"


class IPBlock(models.Model):
    """A client IP blocked after too many failed authentications (realtime.limits).

    The limits store (Redis, or the process's memory) enforces the block; this row is the
    record that the admin, `ws_blocks` and `/ws/security` show, and that an unblock lifts.
    """

    ip = models.CharField("client IP", max_length=45, db_index=True)
    blocked_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    failures = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=200, blank=True, default="")
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["-blocked_at"]
        verbose_name = "IP block"

    def __str__(self) -> str:
        return f"{self.ip} until {self.expires_at}"

    @property
    def active(self) -> bool:
        return self.lifted_at is None and self.expires_at > timezone.now()


class SessionRevocation(models.Model):
    """A user's sessions were revoked: access tokens issued before `revoked_at` are refused
    (realtime.sessions)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="session_revocation",
    )
    revoked_at = models.DateTimeField()
    revoked_by = models.CharField(max_length=150, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.user_id} revoked at {self.revoked_at}"
