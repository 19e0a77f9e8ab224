"""posmesh: shared code (posmesh.common) and the generated protobuf packages (posmesh.<svc>.v1)."""
