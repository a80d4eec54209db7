"""The main job: a resumable recipe of steps from data to a report (gin/pipeline/)."""
