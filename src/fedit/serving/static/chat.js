// fedit chat page: lists /v1/models, streams /v1/chat/completions (server-sent events).
// Model output is only ever inserted with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];
let controller = null;

function setStatus(text) {
  $("status").textContent = text;
}

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

function addMessage(role, text) {
  const item = document.createElement("div");
  item.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  $("log").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch {
    return response.status + " " + response.statusText;
  }
}

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: requestHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const list = await response.json();
    select.replaceChildren();
    for (const model of list.data) {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = model.id;
      option.title = model.root;
      select.append(option);
    }
    if (list.data.some((m) => m.id === "global")) select.value = "global";
    setStatus(list.data.length + " models");
  } catch (err) {
    setStatus("cannot list models: " + err.message);
  }
}

// Yields the data field of each server-sent event.
async function* sseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}

function requestBody() {
  const body = {
    model: $("model").value,
    messages: history,
    stream: true,
    stream_options: { include_usage: true },
  };
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

async function streamAnswer(item) {
  const text = item.querySelector(".text");
  let content = "";
  let chunks = 0;
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: requestHeaders(),
    body: JSON.stringify(requestBody()),
    signal: controller.signal,
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  for await (const data of sseData(response.body)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new Error(chunk.error.message);
    const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
    if (delta && typeof delta.content === "string") {
      content += delta.content;
      chunks += 1;
      text.textContent = content;
      item.dataset.chunks = String(chunks);
      item.scrollIntoView({ block: "end" });
    }
    if (chunk.usage) {
      const u = chunk.usage;
      setStatus(`${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens`);
    }
  }
  return content;
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim() || controller) return;
  history.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  $("prompt").value = "";
  const item = addMessage("assistant", "");
  item.dataset.state = "streaming";
  item.dataset.chunks = "0";
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  try {
    const content = await streamAnswer(item);
    history.push({ role: "assistant", content });
    item.dataset.state = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      history.push({ role: "assistant", content: item.querySelector(".text").textContent });
      item.dataset.state = "stopped";
    } else {
      history.pop();
      item.querySelector(".text").textContent = "error: " + err.message;
      item.dataset.state = "error";
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("log").replaceChildren();
  setStatus("");
});
$("api-key").value = sessionStorage.getItem("fedit-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("fedit-api-key", $("api-key").value.trim());
  loadModels();
});
loadModels();
