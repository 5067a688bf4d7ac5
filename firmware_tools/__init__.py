"""Host-side tools of basilar: the CLI, training, conversion, bundling, deployment, telemetry reading,
benchmarks and evaluation."""
