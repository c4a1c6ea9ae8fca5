from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("pages", "0001_initial"),
    ]

    operations = [
        # db_default: the old release, which does not know the column, can still insert.
        migrations.AddField(
            model_name="visit",
            name="path",
            field=models.CharField(blank=True, db_default="", max_length=200),
        ),
    ]
