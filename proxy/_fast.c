/* proxy._fast: the steady state of a token stream, relayed without the interpreter.
 *
 * ``Stream`` is the base class of ``h1client.UpstreamStream``. Its ``data_received`` is
 * what the event loop calls for every read from vLLM. Once the Python side has ``arm``ed it
 * (fastrelay: the response is started, the client is not backlogged, the translator knows
 * the stream's text-chunk framing), a read that is exactly
 *
 *     <hex size>\r\n data: <text chunk>\n\n \r\n
 *
 * whose chunk has the framing of the stream's previous text chunk and plain text between,
 * becomes the same bytes the Python path writes (``fastrelay._Relay.write`` of
 * ``StreamTranslator.line``): one Ollama NDJSON line, chunk-framed, in one write to the
 * client's transport. Every other read, and every read while disarmed, goes to the Python
 * path (``_data_received``) unchanged, which re-arms when the stream is back in that state.
 * The conditions mirror, one for one, the Python fast paths they replace: ``ChunkedDecoder``'s
 * one-chunk read, ``SSEDecoder``'s one-event read, ``StreamTranslator.line`` and
 * ``_text_line``; tests/unit/test_fast.py holds the two to the same output.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include "structmember.h"

#define VERSION 1 /* proxy/h1client.py checks it: a stale build is not used */

static int enabled = 1;
static PyObject *str_data_received; /* "_data_received" */

typedef struct {
    PyObject_HEAD
    double last;            /* h1client's ``_last``: loop time of the last body read */
    char armed;
    PyObject *time;         /* the loop's ``time`` */
    PyObject *write;        /* the client transport's ``write`` */
    PyObject *is_closing;   /* ... ``is_closing`` */
    PyObject *buffer_size;  /* ... ``get_write_buffer_size`` */
    PyObject *on_backlog;   /* called once the client's buffer is over ``high`` */
    PyObject *created_at;   /* the clock's ``created_at`` */
    PyObject *prefix;       /* the bytes of the last text chunk before its text */
    PyObject *suffix;       /* ... and after it */
    PyObject *parts[4];     /* the translator's TEXT_LINE split at its three %b */
    PyObject *model_json;
    Py_ssize_t high;
    int chunked;            /* the client's body is chunk-framed */
    Py_ssize_t relayed;     /* reads relayed here */
} Stream;

static void
drop(Stream *self)
{
    self->armed = 0;
    Py_CLEAR(self->time);
    Py_CLEAR(self->write);
    Py_CLEAR(self->is_closing);
    Py_CLEAR(self->buffer_size);
    Py_CLEAR(self->on_backlog);
    Py_CLEAR(self->created_at);
    Py_CLEAR(self->prefix);
    Py_CLEAR(self->suffix);
    for (int i = 0; i < 4; i++)
        Py_CLEAR(self->parts[i]);
    Py_CLEAR(self->model_json);
}

static int
Stream_traverse(Stream *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->time);
    Py_VISIT(self->write);
    Py_VISIT(self->is_closing);
    Py_VISIT(self->buffer_size);
    Py_VISIT(self->on_backlog);
    Py_VISIT(self->created_at);
    Py_VISIT(self->prefix);
    Py_VISIT(self->suffix);
    for (int i = 0; i < 4; i++)
        Py_VISIT(self->parts[i]);
    Py_VISIT(self->model_json);
    return 0;
}

static int
Stream_clear(Stream *self)
{
    drop(self);
    return 0;
}

static void
Stream_dealloc(Stream *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    drop(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* a heap type, and subclasses are heap types */
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* ``_PLAIN_TEXT.fullmatch`` (proxy/translate/stream.py): no '"', no control character,
 * a backslash only before one of "\\bfnrt. Sets *ascii to whether every byte is < 0x80. */
static int
plain_text(const unsigned char *s, Py_ssize_t n, int *ascii)
{
    int high = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\\') {
            if (++i >= n)
                return 0;
            c = s[i];
            if (!(c == '"' || c == '\\' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't'))
                return 0;
        }
        else if (c == '"' || c < 0x20)
            return 0;
        else
            high |= c & 0x80;
    }
    *ascii = !high;
    return 1;
}

/* orjson.dumps of a str needs no escaping when it is printable ASCII without '"' or '\\'. */
static int
plain_ascii(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return 0;
    }
    return 1;
}

/* 1: relayed; 0: not this read's shape (the Python path takes it); -1: an exception. */
static int
relay_one(Stream *self, PyObject *data)
{
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);

    /* one whole chunk: <hex>\r\n<payload>\r\n (ChunkedDecoder's one-chunk read) */
    Py_ssize_t i = 0;
    size_t size = 0;
    int v;
    while (i < n && i < 8 && (v = hexval(buf[i])) >= 0) {
        size = size * 16 + (size_t)v;
        i++;
    }
    if (i == 0 || i + 2 > n || buf[i] != '\r' || buf[i + 1] != '\n')
        return 0;
    Py_ssize_t start = i + 2;
    if (size == 0 || (size_t)(n - start) != size + 2 || buf[n - 2] != '\r' || buf[n - 1] != '\n')
        return 0;

    /* one one-line event: data: <event>\n\n (SSEDecoder's one-event read) */
    const char *payload = buf + start;
    Py_ssize_t plen = (Py_ssize_t)size;
    if (plen < 8 || memcmp(payload, "data: ", 6) != 0 || payload[plen - 2] != '\n' || payload[plen - 1] != '\n')
        return 0;
    const char *event = payload + 6;
    Py_ssize_t elen = plen - 8;
    if (memchr(event, '\n', (size_t)elen) != NULL || memchr(event, '\r', (size_t)elen) != NULL)
        return 0;

    /* the stream's text-chunk framing around plain text (StreamTranslator.line) */
    Py_ssize_t pre = PyBytes_GET_SIZE(self->prefix), suf = PyBytes_GET_SIZE(self->suffix);
    if (pre == 0 || pre + suf > elen || memcmp(event, PyBytes_AS_STRING(self->prefix), (size_t)pre) != 0
        || memcmp(event + elen - suf, PyBytes_AS_STRING(self->suffix), (size_t)suf) != 0)
        return 0;
    const char *text = event + pre;
    Py_ssize_t tlen = elen - pre - suf;
    int ascii = 1;
    if (tlen == 0 || !plain_text((const unsigned char *)text, tlen, &ascii))
        return 0;
    if (!ascii) {
        PyObject *check = PyUnicode_DecodeUTF8(text, tlen, NULL);
        if (check == NULL) {
            PyErr_Clear();
            return 0; /* the Python path reports the broken stream */
        }
        Py_DECREF(check);
    }

    PyObject *closing = PyObject_CallNoArgs(self->is_closing);
    if (closing == NULL)
        return -1;
    int gone = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (gone != 0)
        return gone < 0 ? -1 : 0; /* the Python path handles the client that went away */

    PyObject *created = PyObject_CallNoArgs(self->created_at);
    if (created == NULL)
        return -1;
    Py_ssize_t clen;
    const char *cstr = PyUnicode_Check(created) ? PyUnicode_AsUTF8AndSize(created, &clen) : NULL;
    if (cstr == NULL || !plain_ascii(cstr, clen)) {
        PyErr_Clear();
        Py_DECREF(created);
        return 0;
    }

    PyObject *now = PyObject_CallNoArgs(self->time);
    if (now == NULL) {
        Py_DECREF(created);
        return -1;
    }
    double last = PyFloat_AsDouble(now);
    Py_DECREF(now);
    if (last == -1.0 && PyErr_Occurred()) {
        Py_DECREF(created);
        return -1;
    }
    if (!self->armed) { /* disarmed by the calls above: the Python path takes the read */
        Py_DECREF(created);
        return 0;
    }
    self->last = last;

    /* the line: parts[0] model parts[1] "created" parts[2] text parts[3] */
    Py_ssize_t lens[4];
    Py_ssize_t line = PyBytes_GET_SIZE(self->model_json) + clen + 2 + tlen;
    for (int k = 0; k < 4; k++)
        line += lens[k] = PyBytes_GET_SIZE(self->parts[k]);
    char head[24];
    int hlen = self->chunked ? snprintf(head, sizeof head, "%zx\r\n", (size_t)line) : 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, hlen + line + (self->chunked ? 2 : 0));
    if (out == NULL) {
        Py_DECREF(created);
        return -1;
    }
    char *w = PyBytes_AS_STRING(out);
#define PUT(src, len)                    \
    do {                                 \
        memcpy(w, (src), (size_t)(len)); \
        w += (len);                      \
    } while (0)
    PUT(head, hlen);
    PUT(PyBytes_AS_STRING(self->parts[0]), lens[0]);
    PUT(PyBytes_AS_STRING(self->model_json), PyBytes_GET_SIZE(self->model_json));
    PUT(PyBytes_AS_STRING(self->parts[1]), lens[1]);
    *w++ = '"';
    PUT(cstr, clen);
    *w++ = '"';
    PUT(PyBytes_AS_STRING(self->parts[2]), lens[2]);
    PUT(text, tlen);
    PUT(PyBytes_AS_STRING(self->parts[3]), lens[3]);
    if (self->chunked)
        PUT("\r\n", 2);
#undef PUT
    Py_DECREF(created);

    PyObject *write = self->write, *buffer_size = self->buffer_size;
    Py_INCREF(write);
    Py_INCREF(buffer_size);
    PyObject *r = PyObject_CallOneArg(write, out);
    Py_DECREF(out);
    Py_DECREF(write);
    if (r == NULL) {
        Py_DECREF(buffer_size);
        return -1;
    }
    Py_DECREF(r);
    self->relayed++;
    PyObject *pending = PyObject_CallNoArgs(buffer_size);
    Py_DECREF(buffer_size);
    if (pending == NULL)
        return -1;
    Py_ssize_t backlog = PyLong_AsSsize_t(pending);
    Py_DECREF(pending);
    if (backlog == -1 && PyErr_Occurred())
        return -1;
    if (self->armed && backlog > self->high) {
        PyObject *on_backlog = self->on_backlog;
        Py_INCREF(on_backlog);
        drop(self);
        r = PyObject_CallNoArgs(on_backlog);
        Py_DECREF(on_backlog);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 1;
}

static PyObject *
Stream_data_received(Stream *self, PyObject *data)
{
    if (self->armed && PyBytes_CheckExact(data)) {
        int r = relay_one(self, data);
        if (r < 0)
            return NULL;
        if (r > 0)
            Py_RETURN_NONE;
    }
    return PyObject_CallMethodOneArg((PyObject *)self, str_data_received, data);
}

static PyObject *
Stream_arm(Stream *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* arm(time, write, is_closing, get_write_buffer_size, high, on_backlog, created_at,
     *     prefix, suffix, parts, model_json, chunked) -> bool */
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "arm() takes 12 arguments");
        return NULL;
    }
    PyObject *parts = args[9];
    if (!PyTuple_CheckExact(parts) || PyTuple_GET_SIZE(parts) != 4) {
        PyErr_SetString(PyExc_TypeError, "arm(): parts must be a tuple of 4 bytes");
        return NULL;
    }
    if (!PyBytes_CheckExact(args[7]) || !PyBytes_CheckExact(args[8]) || !PyBytes_CheckExact(args[10])) {
        PyErr_SetString(PyExc_TypeError, "arm(): prefix, suffix and model_json must be bytes");
        return NULL;
    }
    for (int k = 0; k < 4; k++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(parts, k))) {
            PyErr_SetString(PyExc_TypeError, "arm(): parts must be a tuple of 4 bytes");
            return NULL;
        }
    }
    Py_ssize_t high = PyLong_AsSsize_t(args[4]);
    if (high == -1 && PyErr_Occurred())
        return NULL;
    int chunked = PyObject_IsTrue(args[11]);
    if (chunked < 0)
        return NULL;
    drop(self);
    if (!enabled)
        Py_RETURN_FALSE;
    self->time = Py_NewRef(args[0]);
    self->write = Py_NewRef(args[1]);
    self->is_closing = Py_NewRef(args[2]);
    self->buffer_size = Py_NewRef(args[3]);
    self->high = high;
    self->on_backlog = Py_NewRef(args[5]);
    self->created_at = Py_NewRef(args[6]);
    self->prefix = Py_NewRef(args[7]);
    self->suffix = Py_NewRef(args[8]);
    for (int k = 0; k < 4; k++)
        self->parts[k] = Py_NewRef(PyTuple_GET_ITEM(parts, k));
    self->model_json = Py_NewRef(args[10]);
    self->chunked = chunked;
    self->armed = 1;
    Py_RETURN_TRUE;
}

static PyObject *
Stream_disarm(Stream *self, PyObject *Py_UNUSED(ignored))
{
    drop(self);
    Py_RETURN_NONE;
}

static PyObject *
Stream_get_armed(Stream *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->armed);
}

static PyMethodDef Stream_methods[] = {
    {"data_received", (PyCFunction)Stream_data_received, METH_O, "The event loop's read callback."},
    {"arm", (PyCFunction)(void (*)(void))Stream_arm, METH_FASTCALL, "Relay the stream's next text chunks here."},
    {"disarm", (PyCFunction)Stream_disarm, METH_NOARGS, "Every read goes to _data_received again."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Stream_members[] = {
    {"_last", T_DOUBLE, offsetof(Stream, last), 0, "loop time of the last body read (0: none yet)"},
    {"relayed", T_PYSSIZET, offsetof(Stream, relayed), READONLY, "reads relayed without the interpreter"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Stream_getset[] = {
    {"armed", (getter)Stream_get_armed, NULL, "whether the next text chunk may be relayed here", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Stream_slots[] = {
    {Py_tp_doc, "The C read path of an upstream stream (see the module's source)."},
    {Py_tp_dealloc, Stream_dealloc},
    {Py_tp_traverse, Stream_traverse},
    {Py_tp_clear, Stream_clear},
    {Py_tp_methods, Stream_methods},
    {Py_tp_members, Stream_members},
    {Py_tp_getset, Stream_getset},
    {Py_tp_new, PyType_GenericNew},
    {0, NULL},
};

static PyType_Spec Stream_spec = {
    .name = "proxy._fast.Stream",
    .basicsize = sizeof(Stream),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Stream_slots,
};

static PyObject *
set_enabled(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    int was = enabled;
    enabled = on;
    return PyBool_FromLong(was);
}

static PyMethodDef module_methods[] = {
    {"set_enabled", set_enabled, METH_O, "Turn arming on or off for streams armed from now on (tests); returns the old value."},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *module)
{
    str_data_received = PyUnicode_InternFromString("_data_received");
    if (str_data_received == NULL)
        return -1;
    PyObject *type = PyType_FromModuleAndSpec(module, &Stream_spec, NULL);
    if (type == NULL)
        return -1;
    if (PyModule_AddObject(module, "Stream", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return PyModule_AddIntConstant(module, "VERSION", VERSION);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "proxy._fast",
    .m_doc = "The steady state of a token stream in C (see proxy/_fast.c).",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__fast(void)
{
    return PyModuleDef_Init(&module_def);
}
