// The chat page of `lmforge serve`: streams replies from /v1/chat/completions (server-sent events
// read from fetch's body stream), keeps the conversation in memory and sends it whole each turn.
//
// Model output is untrusted: it reaches the page only as text nodes (Node.append of a string,
// textContent), never through innerHTML, so a reply holding <script> or <img onerror> shows as
// text. The Content-Security-Policy forbids inline script as a second line of defence.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "lmforge.apiKey";
const state = { history: [], model: null, controller: null };

// ---- a small Markdown subset, built as DOM nodes -------------------------------------------

const FENCE = /^\s*```/;
const LIST_ITEM = /^\s*(?:[-*+]|\d+[.)])\s+/;
// `code`, **bold**, __bold__, *italic*, _italic_ (not inside snake_case words), [label](url)
const INLINE =
  /`([^`\n]+)`|\*\*([^*\n]+)\*\*|__([^_\n]+)__|\*([^*\s][^*\n]*)\*|(?<!\w)_([^_\n]+)_(?!\w)|\[([^\]\n]+)\]\(([^)\s]+)\)/g;

function element(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function appendInline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    parent.append(text.slice(last, match.index));
    const [whole, code, bold, bold2, italic, italic2, label, url] = match;
    if (code !== undefined) {
      parent.append(element("code", code));
    } else if (bold !== undefined || bold2 !== undefined) {
      const strong = element("strong");
      appendInline(strong, bold ?? bold2);
      parent.append(strong);
    } else if (italic !== undefined || italic2 !== undefined) {
      const em = element("em");
      appendInline(em, italic ?? italic2);
      parent.append(em);
    } else if (/^https?:\/\//i.test(url)) {
      // only http(s): a javascript: or data: URL stays plain text
      const link = element("a", label);
      link.href = url;
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      parent.append(link);
    } else {
      parent.append(whole);
    }
    last = match.index + whole.length;
  }
  parent.append(text.slice(last));
}

function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = text.split("\n");
  let i = 0;
  while (i < lines.length) {
    if (FENCE.test(lines[i])) {
      const body = [];
      for (i++; i < lines.length && !FENCE.test(lines[i]); i++) body.push(lines[i]);
      i++; // the closing fence, absent while a reply is still streaming
      const pre = element("pre");
      pre.append(element("code", body.join("\n")));
      fragment.append(pre);
    } else if (LIST_ITEM.test(lines[i])) {
      const list = element(/^\s*\d/.test(lines[i]) ? "ol" : "ul");
      for (; i < lines.length && LIST_ITEM.test(lines[i]); i++) {
        const item = element("li");
        appendInline(item, lines[i].replace(LIST_ITEM, ""));
        list.append(item);
      }
      fragment.append(list);
    } else if (lines[i].trim() === "") {
      i++;
    } else {
      const paragraph = element("p");
      for (let first = true; i < lines.length; i++, first = false) {
        const line = lines[i];
        if (line.trim() === "" || FENCE.test(line) || LIST_ITEM.test(line)) break;
        if (!first) paragraph.append(element("br"));
        appendInline(paragraph, line);
      }
      fragment.append(paragraph);
    }
  }
  return fragment;
}

// ---- the transcript and the controls ---------------------------------------------------------

function addMessage(role, text) {
  const bubble = element("div");
  bubble.className = `msg ${role}`;
  if (role === "assistant") bubble.append(renderMarkdown(text));
  else bubble.textContent = text;
  $("transcript").append(bubble);
  scrollDown();
  return bubble;
}

function addNote(bubble, text) {
  bubble.append(element("span", text));
  bubble.lastChild.className = "note";
}

function scrollDown() {
  const transcript = $("transcript");
  transcript.scrollTop = transcript.scrollHeight;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  document.body.dataset.state = busy ? "busy" : "ready";
  if (busy) setStatus("generating…");
  else if (state.model) setStatus("ready");
}

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (error) {
    // not JSON: fall back to the status
  }
  return `HTTP ${response.status}`;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: requestHeaders() });
    if (!response.ok) {
      state.model = null;
      $("model").textContent = "model: ?";
      const wrongKey = response.status === 401;
      setStatus(wrongKey ? "enter the server's API key" : await errorMessage(response), true);
      return;
    }
    state.model = (await response.json()).data[0].id;
    $("model").textContent = `model: ${state.model}`;
    if (!state.controller) setStatus("ready");
  } catch (error) {
    setStatus(`cannot reach the server: ${error.message}`, true);
  }
}

// ---- streaming a reply -----------------------------------------------------------------------

// Reads the SSE body, calling onText with the text of each read (so the page redraws once per
// network read); returns the finish_reason. An error chunk (the server failed mid-stream) throws.
async function readStream(response, onText) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return finish;
    buffer += value;
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop(); // an event cut by the read: finish it next time
    let text = "";
    for (const line of events.join("\n").split(/\r?\n/)) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") {
        if (text) onText(text);
        return finish;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = (chunk.choices || [])[0];
      if (choice && choice.delta && choice.delta.content) text += choice.delta.content;
      if (choice && choice.finish_reason) finish = choice.finish_reason;
    }
    if (text) onText(text);
  }
}

function chatRequest(userText) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: userText });
  const body = { model: state.model, messages, stream: true };
  const temperature = parseFloat($("temperature").value);
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  if (!Number.isNaN(maxTokens)) body.max_tokens = maxTokens;
  return body;
}

async function send(event) {
  event.preventDefault();
  const userText = $("prompt").value;
  if (!userText.trim() || state.controller) return;
  if (!state.model) await loadModel();
  if (!state.model) return;
  const body = chatRequest(userText);
  $("prompt").value = "";
  const userBubble = addMessage("user", userText);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  state.controller = new AbortController();
  setBusy(true);
  let reply = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: requestHeaders(),
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const finish = await readStream(response, (text) => {
      reply += text;
      bubble.replaceChildren(renderMarkdown(reply));
      scrollDown();
    });
    if (finish === "length") addNote(bubble, "(cut at max tokens)");
    state.history.push({ role: "user", content: userText }, { role: "assistant", content: reply });
  } catch (error) {
    if (error.name === "AbortError") {
      // Stop: keep what came so far; the server frees the row when the connection closes
      addNote(bubble, "(stopped)");
      state.history.push({ role: "user", content: userText }, { role: "assistant", content: reply });
    } else {
      bubble.remove();
      addNote(userBubble, "(not sent: the text is back in the box)");
      addMessage("error", error.message);
      $("prompt").value = userText;
    }
  } finally {
    bubble.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
  }
}

// ---- wiring ----------------------------------------------------------------------------------

function saveKey() {
  if ($("remember-key").checked) localStorage.setItem(KEY_STORAGE, $("api-key").value);
  else localStorage.removeItem(KEY_STORAGE);
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("transcript").replaceChildren();
}

function init() {
  const saved = localStorage.getItem(KEY_STORAGE);
  if (saved !== null) {
    $("api-key").value = saved;
    $("remember-key").checked = true;
  }
  $("api-key").addEventListener("change", () => {
    saveKey();
    loadModel();
  });
  $("remember-key").addEventListener("change", saveKey);
  $("composer").addEventListener("submit", send);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", newChat);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  setBusy(false);
  loadModel();
}

init();
