from django.core.management.base import BaseCommand, CommandError

from pool.shard import run_shard
from pool.supervisor import Supervisor


class Command(BaseCommand):
    help = "Host the WhatsApp clients: a supervisor and N shard processes (docs/architecture.md, processes)."

    def add_arguments(self, parser):
        parser.add_argument("--shards", type=int, default=1, help="Shard processes to run (default 1).")
        parser.add_argument("--shard", type=int, default=None, help="Run as shard K (started by the supervisor).")
        parser.add_argument("--shard-id", default=None, help="Lease owner id for this shard process.")
        parser.add_argument(
            "--control-fd",
            type=int,
            default=None,
            help="The pipe on which a shard tells its supervisor it drains (set by the supervisor).",
        )

    def handle(self, shards: int, shard: int | None, shard_id: str | None, control_fd: int | None, **options):
        if shard is not None:
            run_shard(shard_id, control_fd)
            return
        if shards < 1:
            raise CommandError("--shards must be at least 1", returncode=2)
        Supervisor(shards).run()
