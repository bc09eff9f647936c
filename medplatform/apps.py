from django.apps import AppConfig


class MedplatformConfig(AppConfig):
    name = "medplatform"
    verbose_name = "Platform"

    def ready(self):
        from medplatform import authentication

        authentication.connect_signals()
