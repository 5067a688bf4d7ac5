"""Serial telemetry: the framed protocol (protocol), the device's non-blocking emitter (emitter), the device end
of the link that also takes commands from the host (link), bundle uploads over the line (upload) and a
standalone device agent (agent). The format is specified in docs/telemetry-protocol.md."""
