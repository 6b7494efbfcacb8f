from django.core.management.base import BaseCommand, CommandError

from bots.models import ApiToken


class Command(BaseCommand):
    help = (
        "Revoke the API token whose prefix (its first 8 characters, as the admin shows) is PREFIX. "
        "A prefix that starts with '-' (tokens made before this command existed) goes after '--'."
    )

    def add_arguments(self, parser):
        parser.add_argument("prefix")

    def handle(self, prefix: str, **options):
        tokens = list(ApiToken.objects.filter(prefix=prefix).select_related("user"))
        if not tokens:
            raise CommandError(f"No API token starts with {prefix!r}.")
        if len(tokens) > 1:
            owners = ", ".join(sorted(token.user.get_username() for token in tokens))
            raise CommandError(
                f"{len(tokens)} tokens start with {prefix!r} ({owners}): revoke the right one in the admin."
            )
        token = tokens[0]
        token.revoke()
        self.stdout.write(f"Revoked token {token.prefix}… of {token.user.get_username()}; its open sockets are closed.")
