"""What the tests, the benchmarks and the fault runs drive the agent with: a real Mosquitto,
the agent as a child process, an MJPEG camera server, small ONNX graphs. It lives under
scripts/ so that scripts never import the test tree."""
