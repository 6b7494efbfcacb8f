import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create an admin account when there is no superuser yet, and print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--login-url", default="http://127.0.0.1:8000/login/", help="Where to say to log in.")

    def handle(self, username: str, login_url: str, **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(f"An admin account exists already; log in with it at {login_url}")
            return
        if User.objects.filter(username=username).exists():
            # Never promote an existing account: its owner would get the admin without asking.
            raise CommandError(
                f"A user named {username!r} exists and is not a superuser. "
                "Choose another name with --username, or run: python manage.py createsuperuser"
            )
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the admin account.\n  Log in at {login_url}\n"
                f"  username: {username}\n  password: {password}\n"
                f"  (shown once; change it in the admin, or run: python manage.py changepassword {username})"
            )
        )
