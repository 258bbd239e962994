"""Start, inspect and break the farm: the runtime interface shared by make, the tests and the chaos."""
