from django.urls import path
from pages import views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("visits", views.visits, name="visits"),
    path("write", views.write, name="write"),
]
