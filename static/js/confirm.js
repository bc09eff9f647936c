// Forms with data-confirm="question" submit only once the user agrees (cancelling a job, say).
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
