"""The long-running side: the poll loop, the webhook listener, forge signatures (pure)
and metrics."""
