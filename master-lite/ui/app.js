// The shell: sign-in, navigation between pages (by the URL's fragment), the
// confirmation dialog and the connection indicator.

import { ApiError, SIGNED_OUT, call, collections, connection, session } from './api.js';
import { fill } from './dom.js';
import { route } from './pages.js';

const $ = (id) => document.getElementById(id);
let leave = null; // ends the current page's watches and streams
let role = null;

async function signIn(token) {
  const self = await call('GET', '/self', { token });
  if (self.role !== 'admin' && self.role !== 'viewer') {
    throw new ApiError(403, 'Forbidden', `a ${self.role} token cannot use the dashboard: use a viewer or admin token`);
  }
  return self.role;
}

function showSignIn(message = '') {
  if (leave) leave();
  leave = null;
  role = null;
  Object.values(collections).forEach((c) => c.reset());
  $('nav').hidden = true;
  $('who').hidden = true;
  fill($('page'));
  $('signin').hidden = false;
  $('signin-error').textContent = message;
  $('token').value = '';
  $('token').focus();
}

function showApp(newRole) {
  role = newRole;
  $('signin').hidden = true;
  $('nav').hidden = false;
  $('who').hidden = false;
  $('role').textContent = role;
  render();
}

function render() {
  if (!role) return;
  if (leave) leave();
  const path = decodeURIComponent(location.hash.replace(/^#/, '')) || '/';
  for (const a of $('nav').querySelectorAll('a')) {
    const here = a.getAttribute('href').slice(1);
    const current = here === '/' ? path === '/' : path.startsWith(here);
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const page = $('page');
  fill(page);
  leave = route(path, page, { role, admin: role === 'admin', confirm, toast });
}

/** Asks before an action; resolves to true when confirmed. `extra` is shown in the dialog (an input). */
function confirm(title, text, action = 'Confirm', extra = null) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = action;
  fill($('confirm-extra'), extra);
  return new Promise((resolve) => {
    const done = (answer) => () => {
      $('confirm-ok').onclick = null;
      $('confirm-cancel').onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $('confirm-ok').onclick = done(true);
    $('confirm-cancel').onclick = done(false);
    dialog.onclose = done(false);
    dialog.showModal();
    (extra?.querySelector?.('input') || extra || $('confirm-cancel')).focus?.();
  });
}

let toastTimer = null;
function toast(message, isError = false) {
  const t = $('toast');
  t.textContent = message;
  t.classList.toggle('error', isError);
  t.classList.add('shown');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove('shown'), 6000);
}

$('signin').addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  try {
    const newRole = await signIn(token);
    session.set(token);
    $('token').value = '';
    showApp(newRole);
  } catch (error) {
    $('signin-error').textContent = error.status === 401
      ? 'The master does not accept this token (unknown, expired or revoked).'
      : `Cannot sign in: ${error.message}`;
  }
});

$('signout').addEventListener('click', () => {
  session.clear();
  showSignIn('Signed out.');
});

window.addEventListener(SIGNED_OUT, () => showSignIn('The master no longer accepts the token: sign in again.'));
window.addEventListener('hashchange', () => {
  render();
  $('main').focus({ preventScroll: true });
});

connection.addEventListener('state', (event) => {
  const live = $('live');
  live.textContent = event.detail ? 'live' : 'reconnecting…';
  live.classList.toggle('down', !event.detail);
});

const saved = session.token;
if (saved) {
  signIn(saved).then(showApp, (error) => {
    if (error.status === 401 || error.status === 403) session.clear();
    showSignIn(error.status === 401 ? 'The saved token is no longer accepted: sign in again.' : `Cannot reach the master: ${error.message}`);
  });
} else {
  showSignIn();
}

// Ages shown on the page move on without any request.
setInterval(() => {
  for (const el of document.querySelectorAll('[data-since]')) {
    const s = Math.max(0, Math.round((Date.now() - Date.parse(el.dataset.since)) / 1000));
    el.textContent = s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : s < 172800 ? `${Math.round(s / 3600)}h` : `${Math.round(s / 86400)}d`;
  }
}, 5000);

