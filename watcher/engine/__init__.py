"""The deploy itself: the plan, the executor that runs it, going live, rolling back,
recovery, and the journal that owns every outcome."""
