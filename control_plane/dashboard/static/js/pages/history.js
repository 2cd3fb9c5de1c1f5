// The history page (static/pages/history.html): registers its Alpine components.
