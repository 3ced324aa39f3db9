"""The real-time module: WebSocket connections, topics and the publish path (see docs/)."""
