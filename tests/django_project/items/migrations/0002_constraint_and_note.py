from django.db import migrations, models


class Migration(migrations.Migration):
    """A check constraint first (its SQL is composed with literals before the migration's
    transaction has run anything), then a column with a default."""

    dependencies = [("items", "0001_initial")]

    operations = [
        migrations.AddConstraint(
            model_name="item",
            constraint=models.CheckConstraint(
                condition=models.Q(quantity__gte=0), name="items_quantity_not_negative"
            ),
        ),
        migrations.AddField(
            model_name="item",
            name="note",
            field=models.CharField(default="it's new", max_length=50),
        ),
    ]
