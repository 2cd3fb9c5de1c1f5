// The admin page (static/pages/admin.html): registers its Alpine components.
