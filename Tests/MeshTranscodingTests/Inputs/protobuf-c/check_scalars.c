/* Decodes a trellis.corpus.Scalars that Trellis encoded (read from standard input) with
 * protobuf-c, an independent implementation, and checks every field against the values the
 * Swift test put in. Prints each mismatch and exits 1 if there is any. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "corpus.pb-c.h"

static int failures = 0;

#define CHECK(cond)                                          \
  do {                                                       \
    if (!(cond)) {                                           \
      fprintf(stderr, "mismatch: %s (line %d)\n", #cond, __LINE__); \
      failures++;                                            \
    }                                                        \
  } while (0)

static int bytes_equal(ProtobufCBinaryData b, const char *expected, size_t len) {
  return b.len == len && memcmp(b.data, expected, len) == 0;
}

int main(void) {
  uint8_t buffer[1 << 16];
  size_t len = fread(buffer, 1, sizeof buffer, stdin);
  Trellis__Corpus__Scalars *m = trellis__corpus__scalars__unpack(NULL, len, buffer);
  if (m == NULL) {
    fprintf(stderr, "protobuf-c could not decode the message\n");
    return 1;
  }
  CHECK(m->f_double == 2.5);
  CHECK(m->f_float == -1.25f);
  CHECK(m->f_int64 == INT64_MIN);
  CHECK(m->f_uint64 == UINT64_MAX);
  CHECK(m->f_int32 == -42);
  CHECK(m->f_fixed64 == 1234567890123ULL);
  CHECK(m->f_fixed32 == UINT32_MAX);
  CHECK(m->f_bool == 1);
  CHECK(strcmp(m->f_string, "h\xc3\xa9llo") == 0);
  CHECK(bytes_equal(m->f_bytes, "\x00\x01\x02\xff", 4));
  CHECK(m->f_uint32 == 7);
  CHECK(m->f_sfixed32 == -5);
  CHECK(m->f_sfixed64 == -6);
  CHECK(m->f_sint32 == -7);
  CHECK(m->f_sint64 == -8);
  CHECK(m->color == TRELLIS__CORPUS__COLOR__COLOR_NEGATIVE);
  CHECK(m->nested != NULL && strcmp(m->nested->label, "n") == 0 && m->nested->weight == 3);
  CHECK(m->nested != NULL && m->nested->n_children == 1 &&
        strcmp(m->nested->children[0]->label, "c") == 0);

  CHECK(m->n_r_int32 == 3 && m->r_int32[0] == 1 && m->r_int32[1] == -1 && m->r_int32[2] == 300);
  CHECK(m->n_r_sint64 == 2 && m->r_sint64[0] == -2 && m->r_sint64[1] == 2);
  CHECK(m->n_r_double == 1 && m->r_double[0] == 0.5);
  CHECK(m->n_r_string == 2 && strcmp(m->r_string[0], "a") == 0 && strcmp(m->r_string[1], "") == 0);
  CHECK(m->n_r_bytes == 1 && bytes_equal(m->r_bytes[0], "\x01", 1));
  CHECK(m->n_r_color == 2 && m->r_color[0] == TRELLIS__CORPUS__COLOR__COLOR_RED &&
        m->r_color[1] == TRELLIS__CORPUS__COLOR__COLOR_GREEN);
  CHECK(m->n_r_nested == 2 && m->r_nested[0]->weight == 1 && m->r_nested[1]->weight == 2);
  CHECK(m->n_r_unpacked == 2 && m->r_unpacked[0] == 5 && m->r_unpacked[1] == 6);
  CHECK(m->n_r_bool == 2 && m->r_bool[0] == 1 && m->r_bool[1] == 0);
  CHECK(m->n_r_fixed64 == 1 && m->r_fixed64[0] == 9);

  CHECK(m->n_m_string_int32 == 2);
  for (size_t i = 0; i < m->n_m_string_int32; i++) {
    const char *key = m->m_string_int32[i]->key;
    int32_t value = m->m_string_int32[i]->value;
    CHECK((strcmp(key, "a") == 0 && value == 1) || (strcmp(key, "b") == 0 && value == -2));
  }
  CHECK(m->n_m_int64_string == 1 && m->m_int64_string[0]->key == -5 &&
        strcmp(m->m_int64_string[0]->value, "minus") == 0);
  CHECK(m->n_m_bool_nested == 1 && m->m_bool_nested[0]->key == 1 &&
        strcmp(m->m_bool_nested[0]->value->label, "t") == 0);
  CHECK(m->n_m_uint32_color == 1 && m->m_uint32_color[0]->key == 4 &&
        m->m_uint32_color[0]->value == TRELLIS__CORPUS__COLOR__COLOR_RED);
  CHECK(m->n_m_sint32_bytes == 1 && m->m_sint32_bytes[0]->key == -1 &&
        bytes_equal(m->m_sint32_bytes[0]->value, "\xff", 1));

  CHECK(m->choice_case == TRELLIS__CORPUS__SCALARS__CHOICE_O_NESTED);
  CHECK(m->choice_case == TRELLIS__CORPUS__SCALARS__CHOICE_O_NESTED &&
        strcmp(m->o_nested->label, "chosen") == 0);
  CHECK(m->custom_named == 99);

  trellis__corpus__scalars__free_unpacked(m, NULL);
  if (failures == 0) printf("protobuf-c: every field matches\n");
  return failures == 0 ? 0 : 1;
}
