from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from bots.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it, alone, on the last line (shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to recognise the token in the admin.")

    def handle(self, username: str, name: str, **options):
        User = get_user_model()
        try:
            user = User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(
                f"No user named {username!r}. Create one with: python manage.py createsuperuser"
            ) from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive.")
        token, secret = ApiToken.issue(user, name=name)
        self.stderr.write(f"Created token {token.prefix}… for {username}. It is shown once; store it safely.")
        self.stdout.write(secret)
