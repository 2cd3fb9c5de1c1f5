// The tasks page (static/pages/tasks.html): registers its Alpine components.
