"""The test suite, a package so that ``tests.support`` has one import name for tests and bench/."""
