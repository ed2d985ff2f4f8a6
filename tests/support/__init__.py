"""What the tests share: the Kafka fixtures, the fake provider servers, and the harnesses that
start stream workers, capture workers and trainers. Test modules import helpers from here; the
fixtures reach them through ``tests/conftest.py``'s ``pytest_plugins``."""
