"""FAT12/16/32: declarations (:mod:`.c_fat`), the one-pass writer (:mod:`.write`) and the
reader (:mod:`.read`). The writer's public names are re-exported here."""
from imgkit.formats.fat.write import FatPlan, fat_size_for, plan_fat, write_fat

__all__ = ["FatPlan", "plan_fat", "write_fat", "fat_size_for"]
