from django.db import models


class Visit(models.Model):
    """One request to the front page."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"Visit at {self.created_at:%Y-%m-%d %H:%M:%S}"
