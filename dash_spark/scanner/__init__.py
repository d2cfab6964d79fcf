"""The scan: its model, plan, tasks and Spark jobs."""
