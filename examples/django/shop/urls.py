from django.contrib import admin
from django.urls import path
from orders import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("pool", views.pool),
    path("pool-async", views.pool_async),
    path("orders", views.create_order),
    path("orders/<str:ref>", views.order_detail),
]
