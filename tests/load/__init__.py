"""Load test (issue 3): many concurrent SDK clients against one service and several endpoints."""
