"""Serial telemetry: the framed protocol (protocol), the device's non-blocking emitter (emitter), the device end
of the link that also takes commands from the host (link), bundle uploads over the line (upload) and a
standalone device agent (agent). The format is specified in docs/telemetry-protocol.md."""

# One default for both ends of a line (basilar run --baud, the agent, serial:// targets, basilar telemetry): a
# UART has no autobauding, so ends that default differently cannot talk. Every Pi UART and USB adapter does 115200.
DEFAULT_BAUD = 115200
# The line speeds the commands take: B0 hangs a real tty up; past the rates Linux names (B4000000) pyserial asks the
# driver for a custom rate (USB adapters run at 6 or 12 Mbaud), up to the largest its termios call takes.
BAUD_RANGE = (50, 2**31 - 1)
