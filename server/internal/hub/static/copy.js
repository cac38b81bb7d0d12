// The copy button of a value shown once (a new caller key).
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", () => {
    const field = document.getElementById(button.dataset.copy);
    field.select();
    navigator.clipboard.writeText(field.value).then(
      () => { button.textContent = "Copied"; },
      () => { button.textContent = "Press Ctrl+C to copy"; });
  });
}
