from django.urls import path

from . import views

urlpatterns = [
    path("<str:alias>/add/<str:name>/", views.add),
    path("<str:alias>/session/", views.session),
    path("<str:alias>/temp/", views.temp_table),
]
