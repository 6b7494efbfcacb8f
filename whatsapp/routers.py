"""Where each model lives: the simulator's WhatsApp side in its own store, everything else in the
main database (docs/simulator.md)."""

from __future__ import annotations

SIMULATOR_DB = "simulator"
# WhatsApp's side of the simulator: its servers and the phone, not the platform's data.
SIMULATOR_MODELS = frozenset({"simulatordevice", "simulatorcommand", "simulatorinbound", "simulatorsent"})


def _is_simulator(model) -> bool:
    return model._meta.app_label == "whatsapp" and model._meta.model_name in SIMULATOR_MODELS


class SimulatorRouter:
    def db_for_read(self, model, **hints):
        return SIMULATOR_DB if _is_simulator(model) else "default"

    db_for_write = db_for_read

    def allow_relation(self, obj1, obj2, **hints):
        # A simulator row names its bot by id only (no constraint across databases).
        return True

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        simulator = app_label == "whatsapp" and model_name in SIMULATOR_MODELS
        return simulator if db == SIMULATOR_DB else not simulator
