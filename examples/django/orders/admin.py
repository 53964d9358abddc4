from django.contrib import admin

from orders.models import Event, Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("ref", "item", "status", "shipped_by", "created_at")


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("ref", "kind", "pid", "at")
