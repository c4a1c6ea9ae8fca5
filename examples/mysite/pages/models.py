from django.db import models


class Visit(models.Model):
    """One request to the front page."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # A column added after the first release: with db_default, the release still serving
    # during a deploy (which does not know the field) can go on inserting rows.
    # docs/migrations.md has the recipes.
    path = models.CharField(max_length=200, blank=True, db_default="")

    def __str__(self) -> str:
        return f"Visit at {self.created_at:%Y-%m-%d %H:%M:%S}"
