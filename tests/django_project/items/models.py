from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)
    quantity = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=50, default="it's new")

    class Meta:
        app_label = "items"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(quantity__gte=0), name="items_quantity_not_negative"
            )
        ]
